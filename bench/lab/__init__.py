"""What the benchmarks share: the namespace lab with its relays (``netlab``), the C UDP
tools (``bench/c/udpbench.c``), the twin as a process (``twin_proc``), a TURN client for
coturn (``turn``), the exit codes of a benchmark that builds a lab (``exits``). Not
benchmarks themselves, so not listed by ``icegate bench``."""
