"""``bench/perf_xdp.py``: how perf's samples are charged to the XDP program's functions.

Its run in the lab (perf sampling the attached program) is checked by
``test_bench_all_quick``."""

from __future__ import annotations

from bench.perf_xdp import OWN, chains, charge

SCRIPT = """\
swapper     0 [001]  1234.5678: cpu-clock:
\tffffffff8150a1b2 memcmp+0x12 ([kernel.kallsyms])
\tffffffff8121c3d4 lookup_nulls_elem_raw+0x44 ([kernel.kallsyms])
\tffffffffc0a1b2c3 bpf_prog_0123456789abcdef_xdp_relay+0x1d2 (bpf_prog_0123456789abcdef_xdp_relay)
\tffffffff81a0b0c0 veth_xdp_rcv+0x90 ([kernel.kallsyms])

udpbench  4242 [000]  1234.5679: cpu-clock:
\tffffffffc0a1b2f0 bpf_prog_0123456789abcdef_xdp_relay+0x2f0 (bpf_prog_0123456789abcdef_xdp_relay)
\tffffffff81a0b0c0 veth_xdp_rcv+0x90 ([kernel.kallsyms])

udpbench  4242 [000]  1234.5680: cpu-clock:
\tffffffff81a0b0c0 veth_xdp_rcv+0x90 ([kernel.kallsyms])
"""


def test_samples_are_charged_to_the_innermost_function_of_the_program() -> None:
    samples = chains(SCRIPT)
    assert [s[0] for s in samples] == ["memcmp", "bpf_prog_0123456789abcdef_xdp_relay", "veth_xdp_rcv"]
    assert charge(samples) == {"memcmp": 1, OWN: 1}  # the third sample is not the program's
