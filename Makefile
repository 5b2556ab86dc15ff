# pcachefs -- top-level Makefile.
#
#   make                      build everything into $(O) (default build/)
#   make check                install missing packages, build, run every test
#   make run                  demo mount (see README.md)
#   make bench                benchmarks, writes BENCHMARKS.md
#   make soak / make fuzz     long runs, never in CI
#   make SANITIZE=address,undefined   sanitized build into build-asan/
#   make SANITIZE=thread              TSan build into build-tsan/
#   make DEVELOPER=1          -Werror (CI sets it)
#   make V=1                  show full command lines
#
# Every target that builds runs deps first (contrib/install-deps.sh: installs the missing Debian
# packages, quiet when none is missing; INSTALL_DEPS=cmd replaces it, INSTALL_DEPS=true skips it).
#
# Sources are found by wildcard per folder; each folder is one layer (docs/architecture.md):
#   backing/*.c -> libbacking.a, core/*.c -> libcore.a (of core/crc32c_<arch>.c only the one for
#   the target, see CC_ARCH), fuse/*.c -> pcachefs (fuse/common_*.c also -> the test tools),
#   admin/*.c -> pcachectl, tests/check_*.c + tests/lib/*.c -> one Check runner,
#   tests/tools/*.c -> one program each, tests/fuzz/fuzz_*.c -> libFuzzer targets.

PKG_CONFIG ?= pkg-config
CC ?= cc
AR ?= ar
CLANG ?= clang

ifeq ($(SANITIZE),)
O ?= build
SAN_FLAGS :=
else ifeq ($(SANITIZE),thread)
O ?= build-tsan
SAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
O ?= build-asan
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer
endif

WARN := -Wall -Wextra -Wstrict-prototypes -Wmissing-prototypes -Wwrite-strings -Wvla \
	-Wshadow -Wpointer-arith -Wformat=2 -Wno-unused-parameter -Wundef
ifeq ($(DEVELOPER),1)
WARN += -Werror
endif
OPT ?= -O2

# Packages. On a fresh machine they exist only once the deps target (INSTALL_DEPS) has run, so
# nothing here asks pkg-config while the Makefile is parsed: each *_CFLAGS/*_LIBS below is
# computed at its first use in a recipe and then kept, and every rule that compiles, archives or
# links has deps as an order-only prerequisite, so that first use always comes after deps. A
# failed query stops the build with its name instead of a missing-header error further on.
INSTALL_DEPS ?= ./contrib/install-deps.sh
DEP_PKGS := fuse3 liburing libpmem2 blkid libsystemd
pkg_failed = $(if $(filter PKG-CONFIG-FAILED,$(1)),$(error $(PKG_CONFIG) $(2) failed (are the \
	packages installed? make deps runs $(INSTALL_DEPS))),$(1))
pkg_query = $(call pkg_failed,$(shell $(PKG_CONFIG) $(1) 2>/dev/null || echo PKG-CONFIG-FAILED),$(1))
PKG_CFLAGS = $(eval PKG_CFLAGS := $(call pkg_query,--cflags $(DEP_PKGS)))$(PKG_CFLAGS)
PKG_LIBS = $(eval PKG_LIBS := $(call pkg_query,--libs $(DEP_PKGS)))$(PKG_LIBS)
CHECK_CFLAGS = $(eval CHECK_CFLAGS := $(call pkg_query,--cflags check))$(CHECK_CFLAGS)
CHECK_LIBS = $(eval CHECK_LIBS := $(call pkg_query,--libs check))$(CHECK_LIBS)

# Recursive (=) on purpose: they hold the lazily computed package flags above.
CFLAGS ?= $(OPT) -g
ALL_CFLAGS = -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread \
	$(WARN) $(SAN_FLAGS) -Iinclude $(PKG_CFLAGS) $(CFLAGS) -MMD -MP
ALL_LDFLAGS := -pthread $(SAN_FLAGS) $(LDFLAGS)
LIBS = $(PKG_LIBS) -lm

ifneq ($(V),1)
Q = @
QUIET_CC = @echo "  CC      $@";
QUIET_LD = @echo "  LD      $@";
QUIET_AR = @echo "  AR      $@";
endif

# CPU-specific variants are files, not #ifdefs: core/crc32c_<arch>.c for the architecture the
# compiler targets (the first word of $(CC) -dumpmachine), core/crc32c_generic.c where there is
# none. Nothing in the build assumes a CPU feature; a fast path checks for it at run time.
# NOTE: on a fresh machine there is no compiler yet while this is parsed (deps installs it):
# then the machine's own architecture (uname -m) is the target, as it is for a native build.
CC_ARCH := $(firstword $(subst -, ,$(shell $(CC) -dumpmachine 2>/dev/null)) $(shell uname -m))
CRC32C_SRC := $(firstword $(wildcard core/crc32c_$(CC_ARCH).c) core/crc32c_generic.c)

BACKING_SRCS := $(sort $(wildcard backing/*.c))
CORE_SRCS := $(sort $(filter-out core/crc32c_%.c,$(wildcard core/*.c)) $(CRC32C_SRC))
CTL_SRCS := $(sort $(wildcard admin/*.c))
FUSE_SRCS := $(sort $(wildcard fuse/*.c))
# fuse/ files shared by both programs are named fuse/common_*.c
COMMON_SRCS := $(sort $(wildcard fuse/common_*.c))
FUSE_SRCS := $(filter-out $(COMMON_SRCS),$(FUSE_SRCS))
CHECK_SRCS := $(sort $(wildcard tests/check_*.c))
TESTLIB_SRCS := $(sort $(wildcard tests/lib/*.c))
TOOL_SRCS := $(sort $(wildcard tests/tools/*.c))
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))

obj = $(patsubst %.c,$(O)/%.o,$(1))

LIBBACKING := $(O)/libbacking.a
LIBCORE := $(O)/libcore.a
# the daemon without main(): pcachefs is main.o and this; the unit tests link it too
LIBDAEMON := $(O)/libdaemon.a
PCACHEFS := $(O)/pcachefs
PCACHECTL := $(O)/pcachectl
CHECK_BIN := $(O)/check_pcache
TOOLS := $(patsubst tests/tools/%.c,$(O)/tools/%,$(TOOL_SRCS))

all: $(PCACHEFS) $(PCACHECTL) $(CHECK_BIN) $(TOOLS)

$(O)/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(QUIET_CC)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(LIBBACKING): $(call obj,$(BACKING_SRCS)) | deps
	$(QUIET_AR)rm -f $@ && $(AR) rcs $@ $^

$(LIBCORE): $(call obj,$(CORE_SRCS)) | deps
	$(QUIET_AR)rm -f $@ && $(AR) rcs $@ $^

$(LIBDAEMON): $(call obj,$(filter-out fuse/main.c,$(FUSE_SRCS)) $(COMMON_SRCS)) | deps
	$(QUIET_AR)rm -f $@ && $(AR) rcs $@ $^

$(PCACHEFS): $(O)/fuse/main.o $(LIBDAEMON) $(LIBCORE) $(LIBBACKING) | deps
	$(QUIET_LD)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(PCACHECTL): $(call obj,$(CTL_SRCS)) $(LIBCORE) $(LIBBACKING) | deps
	$(QUIET_LD)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# The Check runner: one suite per tests/check_<module>.c, listed in tests/check_main.c.
$(O)/tests/check_%.o: ALL_CFLAGS += $(CHECK_CFLAGS) -Itests -Ifuse

$(O)/tests/lib/%.o: ALL_CFLAGS += -Itests

$(CHECK_BIN): $(call obj,$(CHECK_SRCS) $(TESTLIB_SRCS)) $(LIBDAEMON) $(LIBCORE) $(LIBBACKING) | deps
	$(QUIET_LD)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LIBS)

# Test tools and benchmark programs: one file each, may use core/, backing/, tests/lib/ and
# fuse/common_*.c (the FUSE session settings shared with pcachefs).
$(O)/tests/tools/%.o: ALL_CFLAGS += -Itests -Ifuse
$(O)/tools/%: $(O)/tests/tools/%.o $(call obj,$(TESTLIB_SRCS) $(COMMON_SRCS)) $(LIBCORE) $(LIBBACKING) | deps
	@mkdir -p $(dir $@)
	$(QUIET_LD)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# libFuzzer targets: clang only, always with ASan+UBSan, own object tree.
FUZZ_O ?= build-fuzz
FUZZ_CFLAGS = -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread -g -O1 \
	-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -Iinclude $(PKG_CFLAGS) \
	-MMD -MP
FUZZ_BINS := $(patsubst tests/fuzz/%.c,$(FUZZ_O)/%,$(FUZZ_SRCS))
$(FUZZ_O)/obj/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(QUIET_CC)$(CLANG) $(FUZZ_CFLAGS) -c -o $@ $<
$(FUZZ_O)/%: $(FUZZ_O)/obj/tests/fuzz/%.o $(patsubst %.c,$(FUZZ_O)/obj/%.o,$(CORE_SRCS) $(BACKING_SRCS)) | deps
	$(QUIET_LD)$(CLANG) -fsanitize=fuzzer,address,undefined -pthread -o $@ $^ $(LIBS)
fuzz-build: $(FUZZ_BINS)

# make fuzz: an hour per target (FUZZ_SECONDS), corpus kept in $(FUZZ_O)/corpus/NAME and seeded
# from tests/fuzz/corpus/NAME. fuzz-short (make check): 20,000 runs per target from the seeds.
FUZZ_SECONDS ?= 3600
fuzz: fuzz-build
	@for f in $(FUZZ_BINS); do n=$$(basename $$f); \
		echo "== fuzz $$f ($(FUZZ_SECONDS)s)"; mkdir -p $(FUZZ_O)/corpus/$$n; \
		if [ -d tests/fuzz/corpus/$$n ]; then cp -n tests/fuzz/corpus/$$n/* $(FUZZ_O)/corpus/$$n/; fi; \
		$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_O)/corpus/$$n || exit 1; done

fuzz-short: fuzz-build
	@for f in $(FUZZ_BINS); do n=$$(basename $$f); \
		echo "== fuzz $$f (short)"; rm -rf $(FUZZ_O)/short/$$n; mkdir -p $(FUZZ_O)/short/$$n; \
		if [ -d tests/fuzz/corpus/$$n ]; then cp tests/fuzz/corpus/$$n/* $(FUZZ_O)/short/$$n/; fi; \
		$$f -runs=20000 -seed=1 $(FUZZ_O)/short/$$n >$(FUZZ_O)/$$n.log 2>&1 \
			|| { tail -50 $(FUZZ_O)/$$n.log; exit 1; }; \
		tail -1 $(FUZZ_O)/$$n.log; done

# Every build goes through here first (order-only prerequisite of each compile and link rule).
deps:
	$(Q)$(INSTALL_DEPS)

unit-bins: $(CHECK_BIN) $(filter-out $(O)/tools/bench_%,$(TOOLS))

# Unit tests of this build flavour (CK_RUN_SUITE / CK_RUN_CASE select, CK_FORK=no debugs).
unit: $(CHECK_BIN) $(TOOLS) suite-table
	$(Q)PCACHE_BUILD=$(abspath $(O)) $(CHECK_BIN)

# Every tests/check_NAME.c must be in check_main.c's table, or its tests would never run.
suite-table:
	$(Q)for f in $(filter-out tests/check_main.c,$(CHECK_SRCS)); do n=$$(basename $$f .c); \
		n=$${n#check_}; grep -q "{ $${n}_suite, " tests/check_main.c || \
		{ echo "$$f: $${n}_suite is missing from the table in tests/check_main.c" >&2; exit 1; }; done

# The engine's concurrency suites under TSan (marked in tests/check_main.c's table).
tsan-unit:
	$(Q)$(MAKE) --no-print-directory SANITIZE=thread unit-bins
	$(Q)PCACHE_TSAN=1 TSAN_OPTIONS="halt_on_error=1 suppressions=$(abspath tests/tsan.supp)" \
		PCACHE_BUILD=$(abspath build-tsan) build-tsan/check_pcache

behaviour: all
	$(Q)PCACHE_BUILD=$(abspath $(O)) tests/run-behaviour.sh $(T)

check: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory unit
	$(Q)$(MAKE) --no-print-directory SANITIZE=address,undefined unit
	$(Q)$(MAKE) --no-print-directory tsan-unit
	$(Q)$(MAKE) --no-print-directory fuzz-short
	$(Q)$(MAKE) --no-print-directory behaviour

soak: deps all
	$(Q)PCACHE_BUILD=$(abspath $(O)) PCACHE_SOAK=1 tests/run-behaviour.sh
	$(Q)PCACHE_SOAK=1 PCACHE_BUILD=$(abspath $(O)) $(CHECK_BIN)

bench: deps all
	$(Q)PCACHE_BUILD=$(abspath $(O)) contrib/bench/run-all.sh

run: deps all
	$(Q)PCACHE_BUILD=$(abspath $(O)) contrib/demo.sh

stop-run:
	$(Q)PCACHE_BUILD=$(abspath $(O)) contrib/demo.sh stop

clean:
	rm -rf build build-asan build-tsan build-fuzz

.PHONY: all deps unit unit-bins suite-table tsan-unit behaviour check soak bench run stop-run clean fuzz fuzz-build fuzz-short

-include $(shell find $(O) $(FUZZ_O) -name '*.d' 2>/dev/null)

# Keep intermediate objects (fuzz objects are otherwise deleted after each fuzz-short run).
.SECONDARY:
