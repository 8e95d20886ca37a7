#!/usr/bin/env bash
# Rebuild the model registry from nothing (docs/models.md, "Reproduce"): v1-v6, champion v6,
# then one more fine-tuning round per tag in $ROUNDS (default "e f g h"; "" for none), each
# on a fresh harvest by the champion of the moment with today's cell reader, each promoted
# only by the rule, until the rule refuses one. 45-85 minutes to v6 on 2 cores, then ~5
# minutes a round. Development registries live outside the repository and are lost with
# their machine; this makes every figure of docs/models.md reproducible from the
# handwriting in $CIFRAS_SHARED_DATA alone. Usage:
#   CIFRAS_DATA_DIR=/path/to/registry deploy/rebuild-models.sh      (or: make models)
set -euo pipefail
: "${CIFRAS_DATA_DIR:?set CIFRAS_DATA_DIR to the data directory of the registry}"
export CIFRAS_SHARED_DATA=${CIFRAS_SHARED_DATA:-../shared/data}
export CIFRAS_MNIST_PATH=${CIFRAS_MNIST_PATH:-$CIFRAS_SHARED_DATA/mnist/mnist.npz}
D=$CIFRAS_SHARED_DATA
cifras train                                                   # v1, champion
cifras train --epochs 30 --augment telegram --no-promote       # v2
cifras build-validation                                        # 200 validation telegrams
for spec in "910 usps:train" "911 optdigits:tra" "912 orand:train"; do set -- $spec
  cifras generate --count 300 --seed $1 --digits $2 --out $CIFRAS_DATA_DIR/scans/ft-$1; done
cifras ingest                                                  # exports the weakly labelled digits
harvest() {  # Danish and ORAND train rows, weakly labelled by the champion
  cifras harvest-cells --images $D/danish_rowid_train --labels $D/danish_rowid_train/labels.csv \
    --out file://$CIFRAS_DATA_DIR/danish-$1
  cifras harvest-cells --images $D/orand_car_a --labels $D/orand_car_a/labels.csv --split train \
    --out file://$CIFRAS_DATA_DIR/orand-$1
}
harvest a
cifras fine-tune file://$CIFRAS_DATA_DIR/exports/datasets file://$CIFRAS_DATA_DIR/danish-a \
  file://$CIFRAS_DATA_DIR/orand-a --model models:/digit-cnn/2 --epochs 4 --no-promote   # v3
cifras promote models:/digit-cnn/3
for spec in "913 usps:train" "914 optdigits:tra"; do set -- $spec
  cifras generate --count 300 --seed $1 --digits $2 --out $CIFRAS_DATA_DIR/scans/ft-$1; done
cifras ingest                                                  # the new champion reads all 1,500
# v4, v5, v6, then the later rounds: each a challenger that becomes champion only by the rule
for tag in b c d ${ROUNDS-e f g h}; do
  harvest $tag
  round=$(cifras fine-tune file://$CIFRAS_DATA_DIR/exports/datasets file://$CIFRAS_DATA_DIR/danish-$tag \
    file://$CIFRAS_DATA_DIR/orand-$tag --epochs 2 --json)
  echo "$round"
  # a refused round leaves the champion as it was, and the next harvest and fine-tuning would
  # repeat it bit for bit (session 16: three refused rounds, three identical versions)
  python -c 'import json, sys; sys.exit(0 if json.loads(sys.argv[1])["promoted"] else 1)' \
    "$(tail -n 1 <<<"$round")" || break
done
cifras calibrate
