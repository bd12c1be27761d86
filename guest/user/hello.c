/* hello [STATUS]: one line, then exit(STATUS) (default 0). */
#include "ulib.h"

int main(int argc, char **argv)
{
	printf("hello from user mode: pid %d on core %d, argc %d", getpid(), getcore(), argc);
	for (int i = 1; i < argc; i++)
		printf(" [%s]", argv[i]);
	printf("\n");
	return argc > 1 ? (int)atol(argv[1]) : 0;
}
