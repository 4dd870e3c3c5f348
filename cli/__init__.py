"""The ``dn2`` command: one entry point, subcommands resolved lazily from a registry.

registry.py  name -> "module:function" (and the pip extra it needs): one line per subcommand
main.py      the dispatcher: ``dn2 --version``, ``dn2 --help``, ``dn2 SUBCOMMAND ...``
checks.py    ``dn2 checks``: versions, onnxruntime providers, OpenCV video back-ends, CPU

This package sits above dn2.runtime, dn2.export and dn2.tools and imports none of them at
load time: ``dn2 fit`` imports only the runtime's fit command, never torch.
"""
