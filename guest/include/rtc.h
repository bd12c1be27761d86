#ifndef RTC_H
#define RTC_H
#include "types.h"
/* Reads the CMOS clock; NULL on success, else why not. */
const char *rtc_read(uint8_t *hour, uint8_t *min, uint8_t *sec);
#endif
