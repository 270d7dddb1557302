"""The seed notebook's progress-measure code (Grokking_Demo), copied as written and wrapped in one
function so tests can compare toytasks' vectorised measures with it on the same checkpoint.
Only the globals it reads (p, dataset, labels, indices, key_freqs, device) became arguments."""
import einops
import torch


def seed_measures(model, p, train_indices, test_indices, key_freqs, device="cpu"):
    a_vector = einops.repeat(torch.arange(p), "i -> (i j)", j=p)
    b_vector = einops.repeat(torch.arange(p), "j -> (i j)", i=p)
    equals_vector = einops.repeat(torch.tensor(p), " -> (i j)", i=p, j=p)
    dataset = torch.stack([a_vector, b_vector, equals_vector], dim=1).to(device)
    labels = (dataset[:, 0] + dataset[:, 1]) % p
    train_labels, test_labels = labels[train_indices], labels[test_indices]

    def loss_fn(logits, labels):
        if len(logits.shape) == 3:
            logits = logits[:, -1]
        logits = logits.to(torch.float64)
        log_probs = logits.log_softmax(dim=-1)
        correct_log_probs = log_probs.gather(dim=-1, index=labels[:, None])[:, 0]
        return -correct_log_probs.mean()

    fourier_basis = []
    fourier_basis.append(torch.ones(p))
    for freq in range(1, p // 2 + 1):
        fourier_basis.append(torch.sin(torch.arange(p) * 2 * torch.pi * freq / p))
        fourier_basis.append(torch.cos(torch.arange(p) * 2 * torch.pi * freq / p))
    fourier_basis = torch.stack(fourier_basis, dim=0).to(device)
    fourier_basis = fourier_basis / fourier_basis.norm(dim=-1, keepdim=True)

    original_logits, cache = model.run_with_cache(dataset)
    neuron_acts = cache["post", 0, "mlp"][:, -1, :]

    # Neuron Clusters
    fourier_neuron_acts = fourier_basis @ einops.rearrange(neuron_acts, "(a b) neuron -> neuron a b", a=p, b=p) @ fourier_basis.T
    fourier_neuron_acts[:, 0, 0] = 0.
    neuron_freq_norm = torch.zeros(p // 2, model.cfg.d_mlp).to(device)
    for freq in range(0, p // 2):
        for x in [0, 2 * (freq + 1) - 1, 2 * (freq + 1)]:
            for y in [0, 2 * (freq + 1) - 1, 2 * (freq + 1)]:
                neuron_freq_norm[freq] += fourier_neuron_acts[:, x, y] ** 2
    neuron_freq_norm = neuron_freq_norm / fourier_neuron_acts.pow(2).sum(dim=[-1, -2])[None, :]

    # Logit Periodicity (the static cell, with key_freqs)
    all_logits = original_logits[:, -1, :]
    all_logits = einops.rearrange(all_logits, "(a b) c -> a b c", a=p, b=p)
    coses = {}
    for freq in key_freqs:
        a = torch.arange(p)[:, None, None]
        b = torch.arange(p)[None, :, None]
        c = torch.arange(p)[None, None, :]
        cube_predicted_logits = torch.cos(freq * 2 * torch.pi / p * (a + b - c)).to(device)
        cube_predicted_logits /= cube_predicted_logits.norm()
        coses[freq] = cube_predicted_logits
    approximated_logits = torch.zeros_like(all_logits)
    cos_sims = {}
    for freq in key_freqs:
        coeff = (all_logits * coses[freq]).sum()
        cos_sims[freq] = coeff / all_logits.norm()
        approximated_logits += coeff * coses[freq]
    residual = all_logits - approximated_logits
    residual_frac = residual.norm() / all_logits.norm()

    def get_restricted_loss(model):
        logits, cache = model.run_with_cache(dataset)
        logits = logits[:, -1, :]
        neuron_acts = cache["post", 0, "mlp"][:, -1, :]
        approx_neuron_acts = torch.zeros_like(neuron_acts)
        approx_neuron_acts += neuron_acts.mean(dim=0)
        a = torch.arange(p)[:, None]
        b = torch.arange(p)[None, :]
        for freq in key_freqs:
            cos_apb_vec = torch.cos(freq * 2 * torch.pi / p * (a + b)).to(device)
            cos_apb_vec /= cos_apb_vec.norm()
            cos_apb_vec = einops.rearrange(cos_apb_vec, "a b -> (a b) 1")
            approx_neuron_acts += (neuron_acts * cos_apb_vec).sum(dim=0) * cos_apb_vec
            sin_apb_vec = torch.sin(freq * 2 * torch.pi / p * (a + b)).to(device)
            sin_apb_vec /= sin_apb_vec.norm()
            sin_apb_vec = einops.rearrange(sin_apb_vec, "a b -> (a b) 1")
            approx_neuron_acts += (neuron_acts * sin_apb_vec).sum(dim=0) * sin_apb_vec
        restricted_logits = approx_neuron_acts @ model.blocks[0].mlp.W_out @ model.unembed.W_U
        # Add bias term
        restricted_logits += logits.mean(dim=0, keepdim=True) - restricted_logits.mean(dim=0, keepdim=True)
        return loss_fn(restricted_logits[test_indices], test_labels)

    def get_excluded_loss(model):
        logits, cache = model.run_with_cache(dataset)
        logits = logits[:, -1, :]
        neuron_acts = cache["post", 0, "mlp"][:, -1, :]
        approx_neuron_acts = torch.zeros_like(neuron_acts)
        # approx_neuron_acts += neuron_acts.mean(dim=0)
        a = torch.arange(p)[:, None]
        b = torch.arange(p)[None, :]
        for freq in key_freqs:
            cos_apb_vec = torch.cos(freq * 2 * torch.pi / p * (a + b)).to(device)
            cos_apb_vec /= cos_apb_vec.norm()
            cos_apb_vec = einops.rearrange(cos_apb_vec, "a b -> (a b) 1")
            approx_neuron_acts += (neuron_acts * cos_apb_vec).sum(dim=0) * cos_apb_vec
            sin_apb_vec = torch.sin(freq * 2 * torch.pi / p * (a + b)).to(device)
            sin_apb_vec /= sin_apb_vec.norm()
            sin_apb_vec = einops.rearrange(sin_apb_vec, "a b -> (a b) 1")
            approx_neuron_acts += (neuron_acts * sin_apb_vec).sum(dim=0) * sin_apb_vec
        excluded_neuron_acts = neuron_acts - approx_neuron_acts
        residual_stream_final = excluded_neuron_acts @ model.blocks[0].mlp.W_out + cache["resid_mid", 0][:, -1, :]
        excluded_logits = residual_stream_final @ model.unembed.W_U
        return loss_fn(excluded_logits[train_indices], train_labels)

    # Logit Periodicity over training: every frequency's cos(w(a+b-c)) cube
    cos_cube = []
    for freq in range(1, p//2 + 1):
        a = torch.arange(p)[:, None, None]
        b = torch.arange(p)[None, :, None]
        c = torch.arange(p)[None, None, :]
        cube_predicted_logits = torch.cos(freq * 2 * torch.pi / p * (a + b - c)).to(device)
        cube_predicted_logits /= cube_predicted_logits.norm()
        cos_cube.append(cube_predicted_logits)
    cos_cube = torch.stack(cos_cube, dim=0)

    def get_cos_sim(model):
        logits = model(dataset)[:, -1]
        logits = einops.rearrange(logits, "(a b) c -> a b c", a=p, b=p)
        vals = (cos_cube * logits[None, :, :, :]).sum([-3, -2, -1])
        return vals / logits.norm()

    def get_residual_cos_sim(model):
        logits = model(dataset)[:, -1]
        logits = einops.rearrange(logits, "(a b) c -> a b c", a=p, b=p)
        vals = (cos_cube * logits[None, :, :, :]).sum([-3, -2, -1])
        residual = logits - (vals[:, None, None, None] * cos_cube).sum(dim=0)
        return residual.norm() / logits.norm()

    with torch.no_grad():
        return dict(fourier_basis=fourier_basis, neuron_freq_norm=neuron_freq_norm, cos_sims=cos_sims,
                    residual_frac=residual_frac, restricted_loss=get_restricted_loss(model),
                    excluded_loss=get_excluded_loss(model), cos_sim_all=get_cos_sim(model),
                    residual_cos_sim=get_residual_cos_sim(model))
