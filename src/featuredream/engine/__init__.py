"""The dreaming engine: config, objectives, fluency, mutation operators, starts, the evaluator, the buffer,
verification and results, and the one loop for K >= 1 features."""
