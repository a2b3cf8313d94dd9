"""A conversation with an instruction-tuned causal LM (`minift chat`): the run's chat template renders the
conversation so far with the generation prompt (minift/data/sft.py), the model continues it until its
end-of-text token (the token every reply was trained to end with), and the reply joins the conversation.

    messages -> render_chat(..., add_generation_prompt=True) -> ids -> model.generate -> reply ids
             -> decoded without the end-of-text token -> {"role": "assistant", "content": reply}

The prompt is the whole conversation encoded at once, as transformers' apply_chat_template encodes it;
the replies are re-encoded from their text on the next turn, as they were in training.
"""

from __future__ import annotations

import torch

from minift.data.sft import check_messages, render_chat, template_variables


class ChatSession:
    """One conversation: ``reply(text)`` adds the user's message and the model's answer.

    ``template``: the chat template (default: the tokenizer's own, which a `--task sft` run saves);
    ``system``: a first system message; ``generate_options``: `generate`'s arguments (max_new_tokens,
    do_sample, temperature, top_k, top_p, generator, ...).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, template: str | None = None,
                 system: str | None = None, **generate_options) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template if template is not None else tokenizer.chat_template
        if self.template is None:
            raise ValueError("the model's tokenizer has no chat template (tokenizer_config.json has no "
                             "\"chat_template\"; a `minift finetune --task sft` run saves one): pass --chat-template")
        self.messages: list[dict] = [] if system is None else [{"role": "system", "content": system}]
        self.options = generate_options

    def prompt_ids(self) -> list[int]:
        """The conversation so far with the start of an assistant turn: what the model continues."""
        text = render_chat(self.messages, self.template, add_generation_prompt=True,
                           **template_variables(self.tokenizer))
        return self.tokenizer.encode(text, add_special_tokens=False, truncation=False)

    def reply(self, text: str, streamer=None) -> str:
        """The model's answer to ``text`` (streamed to ``streamer`` token by token when given)."""
        self.messages.append({"role": "user", "content": text})
        check_messages(self.messages, "the conversation", need_reply=False)
        ids = self.prompt_ids()
        device = next(self.model.parameters()).device
        limit = self.model.config.n_positions
        if len(ids) >= limit:
            self.messages.pop()
            raise ValueError(f"the conversation is {len(ids)} tokens, and the model has {limit} positions: "
                             "start a new conversation")
        prompt = torch.tensor([ids], device=device)
        with torch.no_grad():
            out = self.model.generate(prompt, streamer=streamer, **self.options)
        new = out[0, prompt.shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        if eos in new:
            new = new[: new.index(eos)]  # the end of the reply, not part of it
        answer = self.tokenizer.decode(new)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

