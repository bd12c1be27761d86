/* fault pf|gp|ud|kernel|wx: do something a process is killed for. */
#include "ulib.h"

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "pf";
	printf("fault: pid %d tries %s\n", getpid(), what);
	if (!strcmp(what, "pf"))
		return *(volatile int *)0x0000009000000000ULL;  /* user half, unmapped */
	if (!strcmp(what, "kernel"))
		return *(volatile int *)0xFFFFFFFF80100000ULL;  /* kernel text: supervisor */
	if (!strcmp(what, "gp"))
		return *(volatile int *)0x8000000000000000ULL;  /* non-canonical */
	if (!strcmp(what, "ud"))
		asm volatile("ud2");
	if (!strcmp(what, "wx")) {
		extern char main_text[] asm("main");
		*(volatile char *)main_text = 0;                /* text is read-only */
	}
	printf("fault: nothing happened\n");
	return 1;
}
