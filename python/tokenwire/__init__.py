"""tokenwire: resumable LLM token streaming over SSE and WebTransport.

A :class:`Hub` holds every stream's recent tokens in a Rust ring; producers ``send`` tokens to a
:class:`TokenStream`, subscribers attach, detach and resume at any seq while generation goes on.
"""
