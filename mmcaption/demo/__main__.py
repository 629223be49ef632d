from mmcaption.scripts import demo

demo()
