"""Quick oracle-free check of trained identity codes; see idmrag_plugin.training.quick_eval.

    python benchmarks/codes_quick_eval.py --data gpu_data/faces64_val.npz runs/codes_a runs/codes_b
"""

from idmrag_plugin.training.quick_eval import main

if __name__ == "__main__":
    main()
