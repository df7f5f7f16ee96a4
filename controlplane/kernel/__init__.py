"""Kernel access: bpf(2) through libbpf without bcc (``libbpf``), the pinned maps as a
``MapStore`` (``maps``), and compiling, loading, pinning and attaching the program with
bcc (``loader``)."""
