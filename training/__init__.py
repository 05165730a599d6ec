"""Training pipeline: iSAID-layout data, synthetic mini-iSAID, training, evaluation and export scripts."""
