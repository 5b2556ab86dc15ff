# fuse-plot.gp -- clustered bar chart for contrib/bench/bench-fuse.sh.
#
# gnuplot -e "datafile='x.dat'; outfile='x.png'; ytitle='IOPS'; charttitle='...'; logy=1" fuse-plot.gp
# datafile: a header line "job <config> <config> ...", then one line per job with one value per
# config ("-" where a config did not run that job).
if (!exists("logy")) logy = 0
if (!exists("charttitle")) charttitle = ""

set terminal pngcairo size 1280,640 noenhanced font "sans,10"
set output outfile
set title charttitle
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set datafile missing "-"
set key outside right top vertical
set grid ytics
set xtics nomirror
set ytics nomirror
set ylabel ytitle
set yrange [0:*]
if (logy) {
	set logscale y
	set yrange [*:*]
}
ncols = system("head -1 '" . datafile . "' | wc -w") + 0
plot for [i=2:ncols] datafile using i:xtic(1) title columnheader(i)
