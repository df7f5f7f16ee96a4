"""The cluster loops: Redis access with its degraded mode (``redisio``), backend and
route-key sync (``sync``), the flow cache (``flowcache``) and slow-path recovery from it
(``recovery``)."""
