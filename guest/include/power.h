#ifndef POWER_H
#define POWER_H
#include <stdbool.h>
void power_reboot(void);
void power_off(void);      /* returns (after a message) if it failed */
/* Akaros-style reset: (0xCF9, then) int $0 on a zero stack.  swint.c */
void reboot_int(bool reset_port) __attribute__((noreturn));
#endif
