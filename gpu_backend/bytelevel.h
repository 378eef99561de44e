/*
 * bytelevel.h - GPT-2's byte <-> character mapping, which byte-level BPE
 * vocabularies are spelled in: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes (controls, space, 0x7f-0xa0, 0xad) for
 * U+0100 onwards in byte order.  So " the" is spelled "Ġthe".
 */

#ifndef GPU_BYTELEVEL_H
#define GPU_BYTELEVEL_H

#include <stdint.h>

/* the code point that stands for byte b */
uint32_t bytelevel_char(unsigned char b);

/* the byte that code point c stands for, or -1 */
int bytelevel_byte(uint32_t c);

#endif /* GPU_BYTELEVEL_H */
