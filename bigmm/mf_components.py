def fit_components_matrix_free(*a, **k):
    raise NotImplementedError
