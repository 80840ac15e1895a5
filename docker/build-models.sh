#!/bin/sh
# Entry point of the models image (docker/models.Dockerfile): writes the repository Triton
# serves into /models.
#   1. production configs: python -m modelkit.deploy (TRITON_* variables, see .env.example)
#   2. every model.onnx:    python -m modelkit.build (MODELS_LIPSYNC, MODELS_WAV2LIP_CHECKPOINT)
# Arguments are passed on to modelkit.build and win over the variables, for a one-off run:
#   docker compose run --rm models --lipsync wav2lip-random
# A lasting choice belongs in .env: every `docker compose up` runs this again with it.
set -eu

# Overridable so that tests can run this very script outside the image.
source_repository=${MODELS_SOURCE:-/app/model_repository}
target=${MODELS_TARGET:-/models}
work=${MODELS_WORK:-/build}

# Configs first: modelkit.build reads the lipsync config (its face size) from the repository
# it builds into, and building in place lets its stamps ($work/stamps, a volume) skip every
# model whose inputs did not change on the next start.
python -m modelkit.deploy --source "$source_repository" --target "$target"

lipsync=${MODELS_LIPSYNC:-reference}
checkpoint=${MODELS_WAV2LIP_CHECKPOINT:-}
if [ -n "$checkpoint" ]; then
    set -- --wav2lip-checkpoint "$checkpoint" "$@"
fi
exec python -m modelkit.build --repository "$target" --work "$work" --lipsync "$lipsync" "$@"
