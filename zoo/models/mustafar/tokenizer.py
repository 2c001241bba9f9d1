"""A word-level tokenizer trained locally (the `tokenizers` library) for the tiny LLaVA LLM."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from zoo.models.mustafar.model import IMAGE_TOKEN, PROMPT_TEMPLATE

SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", IMAGE_TOKEN)


def train_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `texts` (+ the template) with <unk>/<pad>/<s>/</s>/<image> specials."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    # Whitespace splits words from punctuation ("USER:" -> "USER", ":"); specials stay whole.
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tokenizer.train_from_iterator(
        [PROMPT_TEMPLATE.format(question="").replace(IMAGE_TOKEN, ""), *texts], trainer
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=[IMAGE_TOKEN],
        model_max_length=512,
    )


def synthetic_texts(images: int = 2000) -> list[str]:
    """Captions, questions and answers of the synthetic training split (the tiny tokenizer's corpus)."""
    from zoo.data.synthetic.captions import COLOURS, NUMBERS, POSES, SHAPES, CaptionDataset

    dataset = CaptionDataset(images, "train")
    texts = [" ".join([*COLOURS, *NUMBERS, *POSES, *SHAPES, *(shape + "s" for shape in SHAPES), "boxes"])]
    for index in range(images):
        record = dataset.item(index)
        texts += [record.caption, *(f"{q} {a}" for q, a in record.questions)]
    return texts


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="train the tiny Mustafar tokenizer on the synthetic text")
    parser.add_argument("--out", default="checkpoints/tiny/mustafar/tokenizer")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    train_word_tokenizer(synthetic_texts(args.images)).save_pretrained(args.out)
