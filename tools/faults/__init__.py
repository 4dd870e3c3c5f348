"""Fault corpora and the table of what they do: ``python -m dn2.tools.faults``.

* :mod:`.fuzz` mutates bundles (every manifest field: missing, wrong type, extreme; every file:
  flipped bytes, truncated, swapped, replaced by another format; digests kept or recomputed)
  and runs each through ``dn2 score`` in a child process that never shares a fate with the
  caller: a native crash or a hang is recorded against its case, never lost.
* :mod:`.corpus` writes the bad-image corpus (also used by the test suite) and runs it through
  fit, score and the watch folder source.
"""
