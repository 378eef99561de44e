/*
 * bytelevel.c - see bytelevel.h.  The 68 stand-ins in order: bytes
 * 0x00-0x20 (33), 0x7f-0xa0 (34), 0xad (1).
 */

#include "bytelevel.h"


uint32_t
bytelevel_char(unsigned char b)
{
    if (b <= 0x20) {
        return 0x100 + b;
    }
    if (b >= 0x7f && b <= 0xa0) {
        return 0x100 + 33 + (b - 0x7f);
    }
    if (b == 0xad) {
        return 0x100 + 67;
    }
    return b;
}


int
bytelevel_byte(uint32_t c)
{
    if (c < 0x100) {
        return (c > 0x20 && c < 0x7f) || (c > 0xa0 && c != 0xad) ? (int) c
                                                                  : -1;
    }
    c -= 0x100;
    return c <= 32 ? (int) c : c <= 66 ? (int) (0x7f + c - 33)
                             : c == 67 ? 0xad : -1;
}
