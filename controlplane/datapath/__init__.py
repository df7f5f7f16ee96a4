"""The relay's datapath in Python: the C layout mirrors (``layout``), the packet codecs
(``wire``), the map interface and its in-memory twin (``store``), the next hop
(``nexthop``), the per-packet logic (``engine``) and the asyncio runner that makes it a
relay without XDP (``twin``). Imports nothing else of the control plane but its config.
"""
