"""Run generated code confined: bubblewrap, seccomp, cgroups."""
