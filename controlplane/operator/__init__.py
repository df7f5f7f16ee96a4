"""The operator surface: the ``relay``, ``flows``, ``backends``, ``token`` and ``stats``
commands (``cli`` and one ``cli_*`` module per group) and their tables and JSON
(``views``)."""
