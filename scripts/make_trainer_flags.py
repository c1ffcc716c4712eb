"""Write src/adalora_ablation/configs/trainer_flags.json: TrainingArguments' flags as the installed transformers
makes them, so that ``train`` parses, checks and lists them (``--help``) without importing transformers.

Run it after changing the transformers version; tests/test_cli_imports.py fails while the file is out of date."""

import json

from adalora_ablation.args import TRAINER_FLAGS, trainer_flags_of_transformers

if __name__ == "__main__":
    found = trainer_flags_of_transformers()
    lines = ",\n".join(f"  {json.dumps(flag)}" for flag in found["flags"])  # one flag a line: diffs stay readable
    TRAINER_FLAGS.write_text(f'{{"transformers": "{found["transformers"]}",\n "flags": [\n{lines}\n]}}\n',
                             encoding="utf-8")
    print(f"wrote {TRAINER_FLAGS}")
