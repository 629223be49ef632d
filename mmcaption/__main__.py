from mmcaption.cli import main

main()
