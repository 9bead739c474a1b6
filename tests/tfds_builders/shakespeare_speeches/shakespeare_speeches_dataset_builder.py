"""Tiny Shakespeare as a TFDS data set of speeches, prepared from a local copy of the file.

The text comes through TFDS's manual directory (`DownloadConfig(manual_dir=...)`), so
preparing needs no network. Speeches are the blank-line separated blocks (a name line, then
the text); every tenth is in the validation split.
"""

import tensorflow_datasets as tfds


class Builder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Speeches of karpathy/char-rnn's Tiny Shakespeare."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put Tiny Shakespeare's input.txt in the manual directory."

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "speaker": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        speeches = (dl_manager.manual_dir / "input.txt").read_text().strip().split("\n\n")
        return {"train": self._generate_examples(speeches, keep=lambda i: i % 10 != 9),
                "validation": self._generate_examples(speeches, keep=lambda i: i % 10 == 9)}

    def _generate_examples(self, speeches, keep):
        for i, speech in enumerate(speeches):
            speaker, _, text = speech.partition("\n")
            if keep(i) and text.strip():
                yield i, {"text": text, "speaker": speaker.rstrip(":")}
