#!/usr/bin/env python3
"""Writes the classic ConvNets as cnnc graphs: graphs/{alexnet,vgg16,resnet50,
mobilenet_v2,squeezenet1_1,googlenet}.yaml.

Layer names follow torchvision's state_dict (features.0, layer1.0.downsample.0,
features.2.conv.1.0, ...), so its weights load by name; GoogLeNet is the 2014 paper's
network (Szegedy et al.) with LRN, as Caffe's bvlc_googlenet, without the auxiliary
classifiers. Plain Python, no dependencies: python3 scripts/make_zoo_graphs.py
"""
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IMAGENET = """input:
  shape: [3, 224, 224]
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
seed: 0
layers:
"""


class G:
    def __init__(self):
        self.lines = []
        self.prev = "input"

    def add(self, name, op, inputs=None):
        ins = f", inputs: [{', '.join(inputs)}]" if inputs and inputs != [self.prev] else ""
        self.lines.append(f"  - {{name: {name}, {op}{ins}}}")
        self.prev = name
        return name

    def conv(self, name, k, f, s=1, p=0, bias=True, groups=1, inputs=None):
        a = f"filters: {k}, size: {f}"
        a += f", stride: {s}" if s != 1 else ""
        a += f", pad: {p}" if p else ""
        a += f", groups: {groups}" if groups != 1 else ""
        a += "" if bias else ", bias: false"
        return self.add(name, f"conv: {{{a}}}", inputs)

    def comment(self, text):
        self.lines.append(f"  # {text}")

    def write(self, stem, header):
        path = os.path.join(ROOT, "graphs", f"{stem}.yaml")
        with open(path, "w") as f:
            f.write(header + f"name: {stem}\n" + IMAGENET + "\n".join(self.lines) + "\n")
        print("wrote", path)


def alexnet():
    g = G()
    g.conv("features.0", 64, 11, 4, 2)
    g.add("features.1", "relu")
    g.add("features.2", "maxpool: {size: 3, stride: 2}")
    g.conv("features.3", 192, 5, 1, 2)
    g.add("features.4", "relu")
    g.add("features.5", "maxpool: {size: 3, stride: 2}")
    g.conv("features.6", 384, 3, 1, 1)
    g.add("features.7", "relu")
    g.conv("features.8", 256, 3, 1, 1)
    g.add("features.9", "relu")
    g.conv("features.10", 256, 3, 1, 1)
    g.add("features.11", "relu")
    g.add("features.12", "maxpool: {size: 3, stride: 2}")
    # torchvision's AdaptiveAvgPool2d((6, 6)) is the identity on 224x224 (6x6 already).
    g.add("classifier.0", "dropout")
    g.add("classifier.1", "fc: {units: 4096}")
    g.add("classifier.2", "relu")
    g.add("classifier.3", "dropout")
    g.add("classifier.4", "fc: {units: 4096}")
    g.add("classifier.5", "relu")
    g.add("classifier.6", "fc: {units: 1000}")
    g.write("alexnet", "# torchvision's AlexNet (Krizhevsky et al., 2012, the one-GPU variant of\n"
            "# 'One weird trick'); layer names follow its state_dict. 61,100,840 parameters.\n")


def vgg16():
    g = G()
    i = 0
    for block, (n, k) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
        for _ in range(n):
            g.conv(f"features.{i}", k, 3, 1, 1)
            g.add(f"features.{i + 1}", "relu")
            i += 2
        g.add(f"features.{i}", "maxpool: {size: 2}")
        i += 1
    g.add("classifier.0", "fc: {units: 4096}")
    g.add("classifier.1", "relu")
    g.add("classifier.2", "dropout")
    g.add("classifier.3", "fc: {units: 4096}")
    g.add("classifier.4", "relu")
    g.add("classifier.5", "dropout")
    g.add("classifier.6", "fc: {units: 1000}")
    g.write("vgg16", "# torchvision's VGG-16 (Simonyan & Zisserman, 2014, configuration D); layer\n"
            "# names follow its state_dict. 138,357,544 parameters.\n")


def resnet50():
    g = G()
    g.conv("conv1", 64, 7, 2, 3, bias=False)
    g.add("bn1", "batchnorm")
    g.add("relu", "relu")
    x = g.add("maxpool", "maxpool: {size: 3, stride: 2, pad: 1}")
    cin = 64
    for li, (n, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            stride = 2 if b == 0 and li > 1 else 1
            g.comment(p)
            g.conv(f"{p}.conv1", width, 1, bias=False, inputs=[x])
            g.add(f"{p}.bn1", "batchnorm")
            g.add(f"{p}.relu1", "relu")
            g.conv(f"{p}.conv2", width, 3, stride, 1, bias=False)
            g.add(f"{p}.bn2", "batchnorm")
            g.add(f"{p}.relu2", "relu")
            g.conv(f"{p}.conv3", width * 4, 1, bias=False)
            main = g.add(f"{p}.bn3", "batchnorm")
            shortcut = x
            if b == 0:
                g.conv(f"{p}.downsample.0", width * 4, 1, stride, bias=False, inputs=[x])
                shortcut = g.add(f"{p}.downsample.1", "batchnorm")
            g.add(f"{p}.add", "add", inputs=[main, shortcut])
            x = g.add(f"{p}.relu3", "relu")
            cin = width * 4
    g.add("avgpool", "global_avgpool")
    g.add("fc", "fc: {units: 1000}")
    g.write("resnet50", "# torchvision's ResNet-50 (He et al., 2016; the stride on the 3x3 conv, 'v1.5');\n"
            "# layer names follow its state_dict. 25,557,032 parameters.\n")


def mobilenet_v2():
    g = G()
    g.conv("features.0.0", 32, 3, 2, 1, bias=False)
    g.add("features.0.1", "batchnorm")
    x = g.add("features.0.2", "relu6")
    cin, i = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for b in range(n):
            stride = s if b == 0 else 1
            p = f"features.{i}.conv"
            g.comment(f"features.{i}: expand {t}, {c} channels, stride {stride}")
            hidden, j = cin * t, 0
            if t != 1:
                g.conv(f"{p}.0.0", hidden, 1, bias=False, inputs=[x])
                g.add(f"{p}.0.1", "batchnorm")
                g.add(f"{p}.0.2", "relu6")
                j = 1
            g.conv(f"{p}.{j}.0", hidden, 3, stride, 1, bias=False, groups=hidden,
                   inputs=[g.prev if t != 1 else x])
            g.add(f"{p}.{j}.1", "batchnorm")
            g.add(f"{p}.{j}.2", "relu6")
            g.conv(f"{p}.{j + 1}", c, 1, bias=False)
            y = g.add(f"{p}.{j + 2}", "batchnorm")
            if stride == 1 and cin == c:
                y = g.add(f"features.{i}.add", "add", inputs=[y, x])
            x, cin, i = y, c, i + 1
    g.conv(f"features.{i}.0", 1280, 1, bias=False)
    g.add(f"features.{i}.1", "batchnorm")
    g.add(f"features.{i}.2", "relu6")
    g.add("pool", "global_avgpool")
    g.add("classifier.0", "dropout")
    g.add("classifier.1", "fc: {units: 1000}")
    g.write("mobilenet_v2", "# torchvision's MobileNet v2 (Sandler et al., 2018): inverted residuals with\n"
            "# depthwise 3x3 convs (groups = channels) and ReLU6; layer names follow its\n"
            "# state_dict. 3,504,872 parameters.\n")


def squeezenet1_1():
    g = G()
    g.conv("features.0", 64, 3, 2)
    g.add("features.1", "relu")
    # torchvision pools with ceil_mode=True; on 224x224 no window is partial, so the
    # plain pools give the same sizes (111 -> 55 -> 27 -> 13).
    g.add("features.2", "maxpool: {size: 3, stride: 2}")

    def fire(i, s, e):
        p = f"features.{i}"
        x = g.prev
        g.conv(f"{p}.squeeze", s, 1)
        sq = g.add(f"{p}.squeeze_activation", "relu")
        g.conv(f"{p}.expand1x1", e, 1, inputs=[sq])
        a = g.add(f"{p}.expand1x1_activation", "relu")
        g.conv(f"{p}.expand3x3", e, 3, 1, 1, inputs=[sq])
        b = g.add(f"{p}.expand3x3_activation", "relu")
        g.add(f"{p}.cat", "concat", inputs=[a, b])

    fire(3, 16, 64)
    fire(4, 16, 64)
    g.add("features.5", "maxpool: {size: 3, stride: 2}")
    fire(6, 32, 128)
    fire(7, 32, 128)
    g.add("features.8", "maxpool: {size: 3, stride: 2}")
    fire(9, 48, 192)
    fire(10, 48, 192)
    fire(11, 64, 256)
    fire(12, 64, 256)
    g.add("classifier.0", "dropout")
    g.conv("classifier.1", 1000, 1)
    g.add("classifier.2", "relu")
    g.add("classifier.3", "global_avgpool")
    g.add("flatten", "flatten")
    g.write("squeezenet1_1", "# torchvision's SqueezeNet 1.1 (Iandola et al., 2016): fire modules of a 1x1\n"
            "# squeeze and concatenated 1x1/3x3 expands; layer names follow its state_dict.\n"
            "# 1,235,496 parameters.\n")


def googlenet():
    g = G()
    # Caffe rounds pooled sizes up; a bottom/right pad of 1 (never the max) does the same.
    pool = "maxpool: {size: 3, stride: 2, pad: 0, pad_end: 1}"
    lrn = "lrn: {size: 5, alpha: 0.0001, beta: 0.75, bias: 1}"
    g.conv("conv1.7x7_s2", 64, 7, 2, 3)
    g.add("conv1.relu_7x7", "relu")
    g.add("pool1.3x3_s2", pool)
    g.add("pool1.norm1", lrn)
    g.conv("conv2.3x3_reduce", 64, 1)
    g.add("conv2.relu_3x3_reduce", "relu")
    g.conv("conv2.3x3", 192, 3, 1, 1)
    g.add("conv2.relu_3x3", "relu")
    g.add("conv2.norm2", lrn)
    g.add("pool2.3x3_s2", pool)

    def inception(m, c1, r3, c3, r5, c5, pp):
        x, p = g.prev, f"inception_{m}"
        g.comment(p)
        g.conv(f"{p}.1x1", c1, 1, inputs=[x])
        a = g.add(f"{p}.relu_1x1", "relu")
        g.conv(f"{p}.3x3_reduce", r3, 1, inputs=[x])
        g.add(f"{p}.relu_3x3_reduce", "relu")
        g.conv(f"{p}.3x3", c3, 3, 1, 1)
        b = g.add(f"{p}.relu_3x3", "relu")
        g.conv(f"{p}.5x5_reduce", r5, 1, inputs=[x])
        g.add(f"{p}.relu_5x5_reduce", "relu")
        g.conv(f"{p}.5x5", c5, 5, 1, 2)
        c = g.add(f"{p}.relu_5x5", "relu")
        g.add(f"{p}.pool", "maxpool: {size: 3, stride: 1, pad: 1}", inputs=[x])
        g.conv(f"{p}.pool_proj", pp, 1)
        d = g.add(f"{p}.relu_pool_proj", "relu")
        g.add(f"{p}.output", "concat", inputs=[a, b, c, d])

    inception("3a", 64, 96, 128, 16, 32, 32)
    inception("3b", 128, 128, 192, 32, 96, 64)
    g.add("pool3.3x3_s2", pool)
    inception("4a", 192, 96, 208, 16, 48, 64)
    inception("4b", 160, 112, 224, 24, 64, 64)
    inception("4c", 128, 128, 256, 24, 64, 64)
    inception("4d", 112, 144, 288, 32, 64, 64)
    inception("4e", 256, 160, 320, 32, 128, 128)
    g.add("pool4.3x3_s2", pool)
    inception("5a", 256, 160, 320, 32, 128, 128)
    inception("5b", 384, 192, 384, 48, 128, 128)
    g.add("pool5.7x7_s1", "avgpool: {size: 7, stride: 1}")
    g.add("pool5.drop_7x7_s1", "dropout: {p: 0.4}")
    g.add("loss3.classifier", "fc: {units: 1000}")
    g.add("prob", "softmax")
    g.write("googlenet", "# GoogLeNet (Szegedy et al., 2014, 'Going deeper with convolutions'), as Caffe's\n"
            "# bvlc_googlenet: LRN after the stem's first two stages, all nine inception\n"
            "# modules, no auxiliary classifiers. Layer names are Caffe's with '.' for '/' (torchvision's\n"
            "# GoogLeNet is a batchnorm variant without LRN). 6,998,552 parameters.\n")


if __name__ == "__main__":
    alexnet()
    vgg16()
    resnet50()
    mobilenet_v2()
    squeezenet1_1()
    googlenet()
