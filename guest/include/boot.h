/* Boot profile recorded by kmain, shown by kerninfo. */
#ifndef BOOT_H
#define BOOT_H
#include "types.h"

struct boot_stage {
	const char *name;
	uint64_t tsc;           /* TSC at the end of the stage */
};

extern uint64_t boot_tsc_start, boot_tsc_prompt;
extern struct boot_stage boot_stages[];
extern int boot_nstages;

#endif
