"""How a run uses the machine: which device (``devices``), how many processes (``distributed``), in what
arithmetic and memory format (``precision``), with which allocator (``allocator``), compiled or not
(``compile``)."""
