"""The perturbation domain: `.h5ad` reading and gene vocabularies (`h5ad`), cell-set sampling (`sets`),
the seeded screen simulator (`simulate`) and cell-eval metrics (`metrics`)."""
