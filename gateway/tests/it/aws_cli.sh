#!/usr/bin/env bash
# The aws CLI against a Shale gateway: usage aws_cli.sh AWS ENDPOINT ACCESS SECRET WORKDIR
set -euo pipefail
AWS=$1; ENDPOINT=$2; export AWS_ACCESS_KEY_ID=$3 AWS_SECRET_ACCESS_KEY=$4 AWS_DEFAULT_REGION=us-east-1
WORK=$5
aws() { "$AWS" --endpoint-url "$ENDPOINT" "$@"; }
cd "$WORK"
aws s3 mb s3://cli
head -c $((100 * 1024 * 1024)) /dev/urandom > big.bin
aws s3 cp big.bin s3://cli/big.bin --only-show-errors
aws s3 cp s3://cli/big.bin big.down --only-show-errors
cmp big.bin big.down
mkdir -p tree/a/b tree/c
for i in 1 2 3; do head -c $((i * 1000)) /dev/urandom > tree/a/file$i; done
echo hello > tree/a/b/deep.txt
: > tree/c/empty
aws s3 sync tree s3://cli/tree --only-show-errors
listed=$(aws s3 ls s3://cli/tree/ --recursive | awk '{print $4}' | sort | tr '\n' ' ')
[ "$listed" = "tree/a/b/deep.txt tree/a/file1 tree/a/file2 tree/a/file3 tree/c/empty " ] || { echo "ls --recursive: $listed"; exit 1; }
mkdir back && aws s3 sync s3://cli/tree back --only-show-errors
diff -r tree back
size=$(aws s3api head-object --bucket cli --key big.bin --query ContentLength --output text)
[ "$size" = $((100 * 1024 * 1024)) ] || { echo "head-object size $size"; exit 1; }
aws s3 mv s3://cli/tree/a/file2 s3://cli/moved/file2 --only-show-errors
aws s3 cp s3://cli/moved/file2 moved.down --only-show-errors
cmp tree/a/file2 moved.down
[ -z "$(aws s3 ls s3://cli/tree/a/file2)" ] || { echo "mv left the source"; exit 1; }
aws s3 rm s3://cli/tree --recursive --only-show-errors
[ -z "$(aws s3 ls s3://cli/tree/ --recursive)" ] || { echo "rm --recursive left objects"; exit 1; }
echo "aws cli checks passed"
