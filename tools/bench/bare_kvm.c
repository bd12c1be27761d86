/* bare_kvm: the floor for userspace exits. The least a VMM can do: one
 * vCPU in 32-bit protected mode running a flat image at 1 MiB, a KVM_RUN
 * loop that completes every exit with nothing behind it, until the guest
 * writes PM1a_CNT (0x604).  Usage: bare_kvm IMAGE CMDLINE */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define RAM (16 << 20)

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s IMAGE CMDLINE\n", argv[0]);
		return 2;
	}
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
	unsigned char *ram = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = RAM, .userspace_addr = (unsigned long)ram,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	FILE *f = fopen(argv[1], "rb");
	if (!f)
		die(argv[1]);
	fread(ram + 0x100000, 1, RAM - 0x100000, f);
	fclose(f);
	/* A Multiboot information structure with just the command line. */
	unsigned int *info = (unsigned int *)(ram + 0x9000);
	info[0] = 1 << 2;
	info[4] = 0x9100;
	strncpy((char *)ram + 0x9100, argv[2], 255);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	struct kvm_sregs sregs;
	ioctl(vcpu, KVM_GET_SREGS, &sregs);
	struct kvm_segment seg = {
		.base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3, .present = 1,
		.db = 1, .s = 1, .g = 1,
	};
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
	seg.type = 0xb;
	seg.selector = 0x08;
	sregs.cs = seg;
	sregs.cr0 = 0x11;
	ioctl(vcpu, KVM_SET_SREGS, &sregs);
	struct kvm_regs regs = { .rip = 0x10000c, .rbx = 0x9000, .rflags = 2 };
	ioctl(vcpu, KVM_SET_REGS, &regs);

	unsigned long exits = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		exits++;
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x604)
			break;
		if (run->exit_reason != KVM_EXIT_IO && run->exit_reason != KVM_EXIT_MMIO) {
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
			return 1;
		}
	}
	printf("%lu exits\n", exits);
	return 0;
}
