/*
 * crc32c_generic.c -- no CRC32C fast path (architectures without a core/crc32c_<arch>.c): the
 * portable table path in core/util.c serves every call (see crc32c_i.h).
 */
#include "crc32c_i.h"

pcache_crc32c_fn pcache_crc32c_hw_probe(void)
{
	return NULL;
}
