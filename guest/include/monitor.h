#ifndef MONITOR_H
#define MONITOR_H
void monitor_run(void) __attribute__((noreturn));
int selftest_main(int argc, char **argv);
int bench_main(int argc, char **argv);
void kerninfo(void);
#endif
