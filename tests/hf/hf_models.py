"""Tiny Hugging Face models and a tokenizer made in the tests (nothing is downloaded)."""

from __future__ import annotations

import torch
import transformers  # the test modules skip before importing this one when it is missing

LINES = [
    "the cat sat on the mat .",
    "the dog sat on the log .",
    "a cat and a dog met on the road .",
    "the bird flew over the old road and the cat watched .",
    "rain fell on the mat and the log all day .",
    "the old dog slept while the bird sang .",
]


def make_tokenizer(extra: tuple[str, ...] = ()):
    """A word-level fast tokenizer trained on :data:`LINES` (plus ``extra`` words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<bos>", "<eos>"])
    tok.train_from_iterator(LINES + [" ".join(extra)], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>",
                                                eos_token="<eos>")


def tiny_model(family: str, vocab_size: int, *, tied: bool = True, seed: int = 0):
    """A random-weight causal LM of ``family`` (gpt2 | llama), dropout off, 2 blocks of width 32."""
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
                                      bos_token_id=1, eos_token_id=2)
        model = transformers.GPT2LMHeadModel(cfg)
    elif family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=64, tie_word_embeddings=tied,
                                       bos_token_id=1, eos_token_id=2)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        raise ValueError(family)
    return model


def last_hidden(model, x: torch.Tensor) -> torch.Tensor:
    """The base model's last hidden state (after its final norm)."""
    return model.base_model(input_ids=x).last_hidden_state
