"""vCPUs: their initial state and thread, guest page walks, instructions KVM leaves to userspace."""
