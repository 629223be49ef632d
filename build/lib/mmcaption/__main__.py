from mmcaption.scripts import mmcaption

mmcaption()
