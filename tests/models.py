"""torchvision's ResNet (BasicBlock and Bottleneck) with the same module names, written here:
PyPI's torchvision does not import beside the torch build these tests pin."""


def resnet(layers=(3, 4, 6, 3), num_classes=1000, bottleneck=False, stride_in_1x1=False):
    """torchvision.models.resnet{18,34} (`bottleneck=False`) or resnet{50,101,152}.

    torchvision's Bottleneck strides in its 3x3 conv ("v1.5"); `stride_in_1x1` strides in the
    first 1x1 conv instead, as the original ResNet v1 (and MXNet Gluon's BottleneckV1) does.
    The state dict is the same either way."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.downsample = None
            if stride != 1 or cin != width:
                self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, width, stride):
            super().__init__()
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            self.conv1 = nn.Conv2d(cin, width, 1, s1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, s3, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(width * 4)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != width * 4:
                self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                                nn.BatchNorm2d(width * 4))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (self.downsample(x) if self.downsample is not None else x))

    block = Bottleneck if bottleneck else BasicBlock

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (n, c) in enumerate(zip(layers, (64, 128, 256, 512)), 1):
                blocks = [block(cin, c, 1 if i == 1 else 2)]
                cin = c * block.expansion
                blocks += [block(cin, c, 1) for _ in range(n - 1)]
                setattr(self, f"layer{i}", nn.Sequential(*blocks))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    return ResNet().eval()


def resnet50(num_classes=1000, stride_in_1x1=False):
    """torchvision.models.resnet50's layout (a model factory: `models:resnet50(9)`)."""
    return resnet((3, 4, 6, 3), num_classes, bottleneck=True, stride_in_1x1=stride_in_1x1)
