"""Everything `generate` uses besides the model (lessons 16 and 32); minift/generate.py is the front door.

- config.py: the settings of a call, their defaults, generation_config.json;
- processors.py: repetition penalty, no repeated n-grams, banned words, minimum length;
- stopping.py: max_length, end-of-sequence ids, stop strings, and the text of each token;
- beam.py: beam search, given any model's step function;
- streamer.py: text as it is generated;
- mixin.py: the `generate` method of a model, reading its generation config.

This file imports nothing, so that minift/generate.py can import these modules while mixin.py imports it.
"""
