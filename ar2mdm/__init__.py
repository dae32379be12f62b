"""ar2mdm's own namespace: the floors every user-facing package stands on.

- `ar2mdm.common`: errors, checkpoint metadata and kinds, modeling rules, outputs, options,
  registries, plugins, seeding, text files (nothing here imports another ar2mdm package);
- `ar2mdm.diffusion`: what makes a masked diffusion LM: noise, schedules, attention layouts;
- `ar2mdm.sampling`: samplers as state machines over one driver;
- `ar2mdm.tasks`: task suites as text, rendered for AR or MDM reading, and plain-HF scoring.

The user-facing packages sit above them: `conversion` (making models), `probe` (the hooking
layer), `analyses` (measurements; `analyses.app` is the `ar2mdm` command line and the study).
Importing `ar2mdm` itself loads nothing.
"""
