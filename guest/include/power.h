#ifndef POWER_H
#define POWER_H
void power_reboot(void);
void power_off(void);      /* returns (after a message) if it failed */
#endif
