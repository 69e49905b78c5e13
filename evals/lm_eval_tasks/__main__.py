"""``python -m evals.lm_eval_tasks [--out DIR] [--template chat_boxed] [--n N] [--max-new-tokens M]``."""

import argparse

from evals.lm_eval_tasks import HERE, write_task_files


def main() -> None:
    parser = argparse.ArgumentParser(description="Write lm-eval task YAMLs generated from the benchmark registry.")
    parser.add_argument("--out", default=str(HERE), help="output folder (default: the package's own, committed)")
    parser.add_argument("--template", default="base_boxed", choices=["base_boxed", "chat_boxed"])
    parser.add_argument("--n", type=int, default=None, help="samples per problem (default: each protocol's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: each protocol's")
    args = parser.parse_args()
    for path in write_task_files(args.out, args.template, args.n, args.max_new_tokens):
        print(path)


if __name__ == "__main__":
    main()
