"""icegate: an edge relay for WebRTC voice AI.

Shared core used by every component: errors, route tokens, wire codecs (IP/UDP,
Geneve, STUN, RFC 7983 classification) and configuration loading. The relay's
control plane lives in ``controlplane``, the WebRTC endpoint in ``transceiver``,
steering in ``geo``, the XDP program in ``bpf/`` (shipped as ``icegate.bpf``).
"""

__version__ = "0.1.0"
