# temporary learnability check (not part of the project; deleted after use)
import sys, time, numpy as np, torch, torchvision
from helpers.data import prepare, load_prepared
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(2)
def run(ds, size, epochs, seed, lr=1e-3, bs=32, n=100):
    P = load_prepared(prepare(ds, image_size=size, seed=seed, n_per_class=n, progress=False))
    m, s = torch.tensor(P.mean).view(1,3,1,1), torch.tensor(P.std).view(1,3,1,1)
    X = ((torch.from_numpy(np.asarray(P.images)).float()/255 - m)/s).to(dev)
    y = torch.from_numpy(P.labels.copy()).to(dev)
    tr, va, te = (torch.from_numpy(P.indices(k)).to(dev) for k in ("train","val","test"))
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(P.class_names)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    def acc(idx):
        model.eval()
        with torch.no_grad(): p = model(X[idx]).argmax(1)
        return (p == y[idx]).float().mean().item()
    out = []
    for ep in range(max(epochs)):
        model.train()
        perm = tr[torch.randperm(len(tr), device=dev)]
        for i in range(0, len(perm), bs):
            b = perm[i:i+bs]
            loss = torch.nn.functional.cross_entropy(model(X[b]), y[b])
            opt.zero_grad(); loss.backward(); opt.step()
        if ep + 1 in epochs: out.append(f"e{ep+1}:{acc(te):.2f}")
    if seed == 0:
        from sklearn.metrics import confusion_matrix
        model.eval()
        with torch.no_grad(): p = model(X[te]).argmax(1)
        print(confusion_matrix(y[te].cpu(), p.cpu()).tolist())
    return " ".join(out)
if __name__ == "__main__":
    for spec in sys.argv[1:]:
        ds, size, n = spec.split(":"); size, n = int(size), int(n)
        import os
        for lr in [float(v) for v in os.environ.get('LRS', '1e-3').split()]:
            res = [run(ds, size, (3, 10, 20), seed, lr=lr, n=n) for seed in (0, 1, 2)]
            print(ds, size, "n", n, "lr", lr, " | ".join(res), flush=True)
