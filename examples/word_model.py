"""A model of your own behind ``tokenwire serve --model examples.word_model:WordModel`` (README, "Your model").

Any object with ``generate(request)`` returning an iterator of text will do: an async iterator runs on the
server's loop; a plain one (a model that blocks while it computes) runs in a worker thread, one token at a time.
"""

import asyncio
from collections.abc import AsyncIterator

from tokenwire import GenerationRequest


class WordModel:
    """Answers with the prompt's words in reverse order, 20 a second."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        return self.words(request.prompt.split()[::-1][: request.max_tokens])

    async def words(self, words: list[str]) -> AsyncIterator[str]:
        for word in words:
            await asyncio.sleep(0.05)
            yield word + " "
