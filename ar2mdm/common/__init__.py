"""The floor every other package stands on: nothing here imports another ar2mdm package.

- `env`: process settings (set on import, before transformers is imported) and the cache
  directory; ar2mdm never sets the hub's offline flags (the user's choice).
- `errors`: `UserError` and its kinds; every bad input raises one.
- `hub`: hub ids ("org/name[@revision]") resolved into the user's HF cache (`localize`).
- `metadata`: `ModelMeta` (what a checkpoint carries), `read_positions` (the shift rule) and the
  checkpoint-kind check (`checkpoint_kind`, `require_kind`).
- `modeling`: small rules about HF models every part applies the same way (position ids that
  skip padding, the pad id, the parameter dtype, the output size).
- `options`: type checks of options from config files, metadata and dataclasses.
- `outputs`: output folders (claimed, locked, never overwritten by surprise) and atomic writes.
- `seeding`: stable seeds derived from labelled or numeric parts.
"""

from ar2mdm.common import env  # noqa: F401  (process settings before transformers or datasets is imported)
