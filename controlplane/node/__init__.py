"""The relay process (``icegate relay run``): the daemon's start order (``daemon``), the
wiring of the loops (``service``), the datapath runners, XDP or twin (``runners``), HTTP
(``http``), Prometheus metrics (``metrics``) and the twin's state over HTTP
(``snapshot``)."""
