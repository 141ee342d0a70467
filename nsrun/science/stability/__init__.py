"""The science of nsrun: noise models, stability and sensitivity estimators, the regulariser, noise
schedules and the theory of SCIENCE.md sections 1-4. It takes plain values and imports none of the layers
above it (runner, launch, analysis, commands: docs/architecture.md). No
re-exports: the runner's config schema imports the settings (settings.py) without torch."""
