"""c56 - fine-tuning: the optimizer is built, then the classifier head is replaced for the new number of
classes (model.fc = nn.Linear(...)); the optimizer still holds the old head, so the new one never moves.
What gradwatch must report: not_updated on fc.weight and fc.bias; no other kind (features.* train).
"""
import torch
import torch.nn as nn

STEPS = 25
EXPECT = {"not_updated": {"must": ["fc.weight", "fc.bias"], "may": []}}


class Backbone(nn.Module):
    def __init__(self, n_cls):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, n_cls)

    def forward(self, x):
        return self.fc(self.features(x))


def run(watch):
    torch.manual_seed(7)
    model = Backbone(10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.fc = nn.Linear(8, 3)  # BUG: after the optimizer was built
    X, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    with watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
    return w
